"""Make a trained model the package's bundled default, keeping its card honest.

    python scripts/bundle_model.py MODEL.safetensors --note "why it replaces the old one"

Re-saves the weights (the tensors unchanged) as
``harmonize_bids/data/models/harmonize_bids_default.safetensors`` with the trained
model's card, plus a ``bundled`` entry: where the weights came from (file, sha256),
the model it replaces (sha256 and the ``git show`` command that restores it) and the
note.  The card's ``weights`` and ``sha256`` then describe the bundled file itself,
as ``tests/test_bundled_model.py`` requires.
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
from pathlib import Path

from harmonize_bids.diffusion.checkpoint import BUNDLED, file_sha256, load_model, save_model


def replaced_model_ref(bundled: Path) -> str | None:
    """``git show COMMIT:PATH`` restoring the bundled file as last committed, if in git."""
    repo = Path(__file__).resolve().parent.parent
    try:
        rel = bundled.resolve().relative_to(repo)
        commit = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h", "--",
                                 str(rel)], capture_output=True, text=True, check=True)
    except (ValueError, OSError, subprocess.CalledProcessError):
        return None
    return f"git show {commit.stdout.strip()}:{rel}" if commit.stdout.strip() else None


def bundle(source: Path, note: str, destination: Path = BUNDLED) -> dict:
    """Write ``source`` (weights + card) to ``destination`` with a provenance entry."""
    model, card = load_model(source)
    if not card:
        raise SystemExit(f"{source}: no model card beside it; refusing to bundle an "
                         "undocumented model")
    provenance = {"from": {"file": Path(source).name, "sha256": file_sha256(source)},
                  "date": datetime.date.today().isoformat(), "note": note}
    if Path(destination).is_file():
        provenance["replaces"] = {"sha256": file_sha256(destination),
                                  "git": replaced_model_ref(Path(destination))}
    save_model(model, destination, card={**card, "bundled": provenance})
    return provenance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a trained model (.safetensors + .json card)")
    parser.add_argument("--note", required=True, help="why this model is bundled")
    parser.add_argument("--destination", type=Path, default=BUNDLED)
    args = parser.parse_args(argv)
    provenance = bundle(args.model, args.note, args.destination)
    print(f"bundled {args.model} as {args.destination} "
          f"(sha256 {file_sha256(args.destination)[:12]}); replaces "
          f"{provenance.get('replaces', {}).get('sha256', 'nothing')[:12]}")


if __name__ == "__main__":
    main()
