"""Model files: safetensors weights with the config in their metadata, and a JSON
model card beside them.  Nothing is ever unpickled: a file that is not a
safetensors file is refused before any deserialization."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from harmonize_bids.exceptions import InputError
from harmonize_bids.utils.io import atomic_path, atomic_write_json

FORMAT = "harmonize_bids-model-1"


class ModelFileError(InputError):
    """A model file is missing, not safetensors, or does not match its config."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fobj:
        for block in iter(lambda: fobj.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


BUNDLED = Path(__file__).resolve().parents[1] / "data" / "models" / \
    "harmonize_bids_default.safetensors"


def bundled_model() -> Path | None:
    """The model shipped in the package, if this installation has one."""
    return BUNDLED if BUNDLED.is_file() else None


def card_path(model_path: Path) -> Path:
    """``model.safetensors`` -> ``model.json``."""
    return Path(model_path).with_suffix(".json")


def read_card(model_path: Path) -> dict[str, Any]:
    """The model card beside a model file; ``{}`` when there is none.

    >>> read_card(Path("/nonexistent/model.safetensors"))
    {}
    """
    path = card_path(model_path)
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path}: the model card is not valid JSON ({err})") from err
    if not isinstance(card, dict):
        raise ModelFileError(f"{path}: the model card is not a JSON object")
    return card


def _read_header(path: Path) -> dict[str, Any]:
    """Parse the safetensors header by hand (8-byte length + JSON), refusing anything else."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fobj:
        head = fobj.read(9)
        (length,) = struct.unpack("<Q", head[:8]) if len(head) >= 8 else (0,)
        if len(head) < 9 or head[8:9] != b"{" or length > min(size - 8, 100_000_000):
            if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
                raise ModelFileError(
                    f"{path}: looks like a pickle/PyTorch checkpoint; only .safetensors model "
                    "files are accepted (unpickling can run arbitrary code)")
            raise ModelFileError(f"{path}: not a safetensors model file")
        fobj.seek(8)
        try:
            header = json.loads(fobj.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelFileError(f"{path}: corrupt safetensors header ({err})") from err
    meta = header.get("__metadata__", {})
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ModelFileError(f"{path}: not a harmonize_bids model (no config in metadata)")
    return meta


def save_model(model, path: Path, card: dict[str, Any] | None = None) -> Path:
    """Write weights (+ config in metadata) and the model card, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict())}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    full_card = {**(card or {}), "config": model.config.to_dict(),
                 "sites": list(model.config.sites), "sha256": file_sha256(path),
                 "weights": path.name}
    atomic_write_json(full_card, card_path(path))
    return path


def read_config(path: Path):
    """The :class:`ModelConfig` stored in a model file (no weights loaded)."""
    from harmonize_bids.diffusion.model import ModelConfig

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    meta = _read_header(path)
    try:
        return ModelConfig.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path}: invalid model config ({err})") from err


def load_model(path: Path, device: str = "cpu"):
    """Build the model from a safetensors file; return ``(model, card)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from harmonize_bids.diffusion.model import HarmonizationModel

    path = Path(path)
    config = read_config(path)
    try:
        state = load_file(str(path), device=device)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ModelFileError(f"{path}: corrupt weights ({err})") from err
    model = HarmonizationModel(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFileError(f"{path}: weights do not match the config ({err})") from err
    return model.to(device).eval(), read_card(path)
