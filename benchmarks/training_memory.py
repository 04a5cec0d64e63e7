#!/usr/bin/env python
"""Training step: time and peak memory with and without gradient checkpointing.

Each configuration (patch size x batch size x checkpointing) runs in a fresh child
process that builds the bundled model's architecture, does ``--warmup`` training
steps and then ``--steps`` timed ones on random data (the cost of a step does not
depend on the data).  Peak memory is the child's max RSS minus that of an identical
child that builds everything but never trains (so it is what training adds: weights'
gradients, optimizer state, activations).

    python benchmarks/training_memory.py --threads 2
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
from harmonize_bids.diffusion.checkpoint import bundled_model, load_model
from harmonize_bids.diffusion.model import HarmonizationModel
from harmonize_bids.training.data import Batch
from harmonize_bids.training.loop import TrainConfig, TrainLoop, use_bf16
patch, batch, ckpt, threads, steps, warmup, device = (int(sys.argv[1]), int(sys.argv[2]),
    sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7])
from harmonize_bids.utils.cpu import configure_cpu
configure_cpu(threads)
model = HarmonizationModel(load_model(bundled_model())[0].config)  # fresh weights
k = 2 * model.config.context_slices + 1
g = torch.Generator().manual_seed(0)
def sample(rng):
    return Batch(torch.rand(batch, k, patch, patch, generator=g),
                 torch.rand(batch, k, patch, patch, generator=g),
                 torch.rand(batch, 1, patch, patch, generator=g),
                 torch.randint(0, len(model.config.sites), (batch,), generator=g),
                 torch.randint(0, len(model.config.sites), (batch,), generator=g))
loop = TrainLoop(model, sample, TrainConfig(gradient_checkpointing=ckpt, bf16=use_bf16(device)),
                 device=device)
if steps:
    loop.run(warmup)
    if device == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loop.run(steps)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
else:
    dt = 0.0
gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
print(json.dumps({"s_per_step": dt, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "gpu_mb": gpu}))
"""


def child(patch: int, batch: int, ckpt: bool, threads: int, steps: int, warmup: int,
          device: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(patch), str(batch), str(int(ckpt)),
                          str(threads), str(steps), str(warmup), device],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--configs", nargs="+", default=["64x12", "64x48", "112x12"],
                        help="PATCHxBATCH (the bundled model trains on 64x12)")
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).parent / "results" / "training_memory.md")
    args = parser.parse_args()
    import torch

    from harmonize_bids.training.loop import use_bf16

    rows = []
    for spec in args.configs:
        patch, batch = (int(v) for v in spec.split("x"))
        base = child(patch, batch, False, args.threads, 0, 0, args.device)["rss_mb"]
        for ckpt in (False, True):
            r = child(patch, batch, ckpt, args.threads, args.steps, args.warmup, args.device)
            rows.append((f"{patch}x{patch}", batch, "yes" if ckpt else "no", r["s_per_step"],
                         r["rss_mb"] - base, r["gpu_mb"]))
            print(rows[-1], flush=True)
    lines = [
        "# Training step: gradient checkpointing trade-off",
        "",
        f"- command: `python benchmarks/training_memory.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} torch threads, torch {torch.__version__}, device {args.device}"
        + f"; bf16 autocast {'on' if use_bf16(args.device) else 'off'} (`use_bf16`)",
        "- model: the bundled model's architecture; random data; "
        f"{args.warmup} warm-up + {args.steps} timed steps per row",
        "- memory: peak RSS of the training process minus that of a process that built the "
        "same model and data but did not train" + ("; GPU: peak allocated" if args.device == "cuda" else ""),
        "",
        "| patch | batch | checkpointing | s/step | added peak RSS (MB) |"
        + (" GPU peak (MB) |" if args.device == "cuda" else ""),
        "|---|---|---|---|---|" + ("---|" if args.device == "cuda" else ""),
    ]
    for patch, batch, ckpt, dt, mb, gpu in rows:
        lines.append(f"| {patch} | {batch} | {ckpt} | {dt:.2f} | {mb:.0f} |"
                     + (f" {gpu:.0f} |" if args.device == "cuda" else ""))
    text = "\n".join(lines) + "\n"
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)


if __name__ == "__main__":
    main()
