#!/usr/bin/env python
"""Write ``docker/constraints.txt``: the installed versions of harmonize_bids's
dependency closure (torch excluded: each image flavour installs its own build).

Run in the environment whose versions the image should pin (e.g. after a green
``.ci/run``)::

    python scripts/write_constraints.py
"""
from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement

HEADER = ("# Pinned Python dependencies of the container image (everything but torch, which each\n"
          "# flavour installs itself). Regenerate with: python scripts/write_constraints.py\n")


def closure(root: str) -> dict[str, str]:
    """{normalized name: installed version} of ``root``'s runtime dependencies."""
    seen: dict[str, str] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[key] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def main() -> None:
    pins = closure("harmonize_bids")
    for skip in ("harmonize-bids", "torch"):
        pins.pop(skip, None)
    out = Path(__file__).resolve().parents[1] / "docker" / "constraints.txt"
    out.write_text(HEADER + "".join(f"{k}=={v}\n" for k, v in sorted(pins.items())))
    print(f"{len(pins)} pins written to {out}")


if __name__ == "__main__":
    main()
