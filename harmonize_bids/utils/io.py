"""Atomic file writes: a crash never leaves a partial file under a final name."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place on success.

    The temporary name keeps the final suffixes (so writers that look at the
    extension, like nibabel, behave) and is removed if the block raises.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix="".join(final.suffixes),
                               dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_copy(src: Path, final: Path) -> Path:
    """Copy ``src`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        shutil.copyfile(src, tmp)
    return Path(final)


def atomic_write_text(text: str, final: Path) -> Path:
    """Write text to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text)
    return Path(final)


def atomic_write_json(data: dict[str, Any], final: Path) -> Path:
    """Write a JSON object (sorted keys, indented) to ``final`` atomically."""
    return atomic_write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", final)
